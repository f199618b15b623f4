"""Per-backend gradient adapters: the only model code that imports a backend.

Each module has ``train_step(model, ...)`` and ``test_step(model, ...)`` with
the signature its Keras trainer calls. The objective itself lives in
``VAECycleGAN`` and ``training/losses.py`` and is shared.
"""
