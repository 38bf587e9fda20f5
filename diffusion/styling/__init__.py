"""Style and colour transfer: the fast feed-forward TransformerNet (transformer_net.py), Gatys-style
optimisation over convolutional features (features.py, neural.py) and statistical colour transfer
(color.py). Every module imports torch only inside its functions."""
