"""Entry point: ``python cli.py fit|predict|evaluate|export|phantom ...``."""

from keras_vaegan.cli import main

if __name__ == "__main__":
    main()
