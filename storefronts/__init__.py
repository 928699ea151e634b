"""The mock store web app built from a catalog, its layout variants and its order log."""
