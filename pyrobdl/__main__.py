"""``python -m pyrobdl ...``: the same as the ``pyrobdl`` command (:mod:`pyrobdl.cli`)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
