"""The learned x_0 layer: a staged conditional network p(x_0 | x_{t_end}, x^_0), integer-exact at inference."""
