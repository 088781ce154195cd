"""A short text account of what the real CUDA compiler found (tests/test_cuda_ptx.py's report).

python tests/ptx_summary.py REPORT.json
"""

from __future__ import annotations

import json
import sys


def summarize(report: dict) -> str:
    """Kernels and signatures compiled, the toolchain, failures and float64 arithmetic."""
    if report.get("status") != "ok":
        return f"no compilation: {report.get('reason')}"
    kernels = signatures = assembled = 0
    failures, float64 = [], []
    for module_name, module in sorted(report["modules"].items()):
        for kernel_name, kernel in sorted(module["kernels"].items()):
            kernels += 1
            for entry in kernel["compiled"]:
                signatures += 1
                where = f"{module_name}.{kernel_name}"
                if entry["error"] or entry.get("assembler_error"):
                    failures.append(where)
                elif entry.get("assembler_error") is None and report.get("ptxas"):
                    assembled += 1
                by_design = where in report.get("float64_by_design", ())
                for line, opcodes in entry.get("float64", {}).items():
                    kind = "by design" if by_design else "OFFENDER"
                    float64.append(f"{kind}: {where} at {line}: {' '.join(opcodes)}")
            if kernel["launch_problems"]:
                failures.append(f"{module_name}.{kernel_name} (launch)")
    failures += [
        f"exercise of {name}" for name, m in report["modules"].items() if m["exercise_error"]
    ]
    failures += [f"exercise of {name}" for name, error in report["caller_errors"].items() if error]
    tools = report.get("toolchain", {})
    lines = [
        f"compiled for sm_90: {kernels} kernels in {len(report['modules'])} modules, "
        f"{signatures} signatures; assembled by ptxas: {assembled}",
        f"toolchain: numba {tools.get('numba')}, numba-cuda {tools.get('numba_cuda')}, "
        f"NVVM IR {tools.get('nvvm_ir')} from {tools.get('libnvvm')}",
        f"ptxas: {report.get('ptxas')} ({tools.get('ptxas')})",
        f"failures: {', '.join(sorted(set(failures))) or 'none'}",
        f"float64 arithmetic in float32 signatures: {len(float64)} source lines, "
        f"{sum(line.startswith('OFFENDER') for line in float64)} of them not by design "
        "(FLOAT64_BY_DESIGN of tests/test_cuda_ptx.py)",
        *(f"  {line}" for line in float64),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(summarize(json.load(handle)))
