"""``python -m MRtoCTSynthesisLib.quality``: the same as ``mrtoct bench quality``."""
import sys


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["bench", "quality", *sys.argv[1:]]))
