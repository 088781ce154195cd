"""The optimiser of the deconvolution: L-BFGS and its strong-Wolfe line search."""
