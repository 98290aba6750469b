"""Label file formats read and written in one place each."""
