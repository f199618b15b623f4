"""``python -m keras_vaegan``: the same command line as ``keras-vaegan`` and ``python cli.py``."""

from keras_vaegan.cli import main

if __name__ == "__main__":
    main()
