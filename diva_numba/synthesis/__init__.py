"""The guided synthesis at full resolution: A' and B copied patch by patch from the
style image over a pyramid of scales, with its guides (docs/DESIGN.md section 10)."""
