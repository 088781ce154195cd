"""The deep image analogy of one pair of images: its parameters, the model, the
coarse-to-fine matching and reconstruction over VGG levels 5..1, and field pictures."""
