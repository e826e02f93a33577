"""``python -m bench NAME``: run one benchmark (see each module's docstring)."""

from __future__ import annotations

import sys


def main() -> int:
    choices = {"control": "bench.control_fanout", "dns": "bench.dns_qps",
               "relay": "bench.relay_capacity", "paths": "bench.paths",
               "cpu": "bench.discovery_cpu", "scale": "bench.scale",
               "matrix": "bench.matrix", "dataplane": "bench.dataplane", "all": "bench.run_all",
               "compare": "bench.compare", "fuzz": "bench.fuzz"}
    if len(sys.argv) < 2 or sys.argv[1] not in choices:
        print(f"usage: python -m bench {{{','.join(choices)}}} [options]", file=sys.stderr)
        return 2
    import runpy

    module = choices[sys.argv[1]]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
