import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C in the first milliseconds: no traceback either
    print("selfsup: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
