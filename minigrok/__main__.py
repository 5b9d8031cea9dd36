import sys

# Ctrl-C while the command line's module loads is one line too; cli.main covers the rest.
try:
    from .cli import main
except KeyboardInterrupt:
    sys.stderr.write("minigrok: interrupted\n")
    sys.exit(130)

sys.exit(main())
