"""The shared training core: data, networks, the objective, the sampler, checkpoints, the loop."""
