"""Models; each is one module here plus one yaml in conf/model/. They take uint8 images."""
