"""Entropy coding on constriction's rANS stack: fixed laws for the channel's symbols and the exact x_0 layer."""
