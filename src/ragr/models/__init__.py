"""Model families: build, save and load. Families are looked up in :data:`ragr.registry.families`."""
