"""`python -m calign` / `calign`: version, build and a self-check of the C kernels."""

import sys

import calign
from calign import selfcheck


def print_info():
    info = calign.build_info()
    print(f"calign {calign.__version__}")
    print(f"BLAS: {info['blas']} — {info['blas_config']}")
    print(f"BLAS kernel (core type): {info['blas_core']}")
    print(f"threads: {info['threads']} of {info['cores']} cores (OpenMP {info['openmp']})")
    print(f"CPU: {info['cpu']}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(f"calign: unknown arguments {' '.join(argv)!r}; run `calign` alone for the "
              "self-check", file=sys.stderr)
        return 2
    print_info()
    err_logp, err_grad, seconds = selfcheck.run()
    ok = err_logp < 1e-4 and err_grad < 1e-4
    print(f"self-check of the fused log-prob kernel against NumPy (256 x 5003 vocab): "
          f"max |dlogp| = {err_logp:.2e}, max |dgrad| = {err_grad:.2e}, "
          f"{seconds * 1e3:.1f} ms — {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
