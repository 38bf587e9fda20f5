"""Style and colour transfer: the fast feed-forward TransformerNet, Gatys-style optimisation over
convolutional features, and statistical colour transfer. Library code for nodes/style.py; every module
imports torch only inside its functions."""
