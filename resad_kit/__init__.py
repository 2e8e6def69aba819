"""resad_kit."""
