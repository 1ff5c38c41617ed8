"""``python -m modelops_calabaria`` = the ``calabaria`` command."""

from modelops_calabaria.cli import main

if __name__ == "__main__":
    main()
