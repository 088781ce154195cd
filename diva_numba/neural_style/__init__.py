"""Neural style (Gatys et al. 2016) on the project's VGG-19: its parameters, the loss and
its gradient in one pass through the network, and the optimisation of an image."""
