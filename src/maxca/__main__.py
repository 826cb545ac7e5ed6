"""``python -m maxca`` (also what ``torchrun -m maxca train ...`` runs)."""

from maxca.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
