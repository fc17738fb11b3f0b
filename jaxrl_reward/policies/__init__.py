"""What is trained, behind one interface (see `base.Policy`): `lm` for token sequences."""
