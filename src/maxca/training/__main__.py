"""``python -m maxca.training CONFIG [key=value ...]``: train without the CLI, e.g. under
``torchrun --standalone --nproc_per_node 2 -m maxca.training CONFIG``."""

from __future__ import annotations

import sys

from maxca.errors import MaxcaInputError
from maxca.runtime import tune_cpu_allocator
from maxca.training.trainer import main_train


def main(argv: list[str] | None = None) -> int:
    """Run :func:`~maxca.training.trainer.main_train`; one-line message on user errors."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m maxca.training CONFIG [key=value ...]", file=sys.stderr)
        return 0 if args else 2
    tune_cpu_allocator()
    try:
        run_dir = main_train(args[0], args[1:])
    except MaxcaInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
