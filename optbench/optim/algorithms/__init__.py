"""One file per optimizer; each registers itself with `optbench.optim.registry.register`."""
