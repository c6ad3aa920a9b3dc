"""Applications that use the portal from the outside, as a region's services would."""
