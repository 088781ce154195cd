"""What is applied to a frame after the analogy: keyframes and their gradient-domain
blend, colour preservation and masks, and the photo mode's refinement."""
