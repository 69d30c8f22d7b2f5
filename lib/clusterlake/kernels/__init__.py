"""Pure numpy kernels: no Spark imports here (a test enforces this)."""
