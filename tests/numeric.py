"""Independent numeric references shared by the tests (numpy only)."""
import numpy as np


def fd_grad(f, x, h=1e-6):
  """Central finite differences of a scalar numpy function `f` at `x` (float64)."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g
