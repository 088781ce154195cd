"""Model manifest: known VGG-19 sources and the checksums that pin them."""
