"""Shared pytest setup for the test suite."""
import normrt


def pytest_report_header(config):
    # which kernel build ran (NORMRT_ISA forces one): a failure at one ISA
    # level must say so; tests/test_isa.py checks this line in its runs
    info = normrt.cpu_info()
    forced = f", NORMRT_ISA={info['forced']}" if info["forced"] else ""
    return f"normrt kernels: {info['level']} (cpu {info['cpu_level']}{forced})"
