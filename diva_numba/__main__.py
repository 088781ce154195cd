from diva_numba.cli import main

main()
