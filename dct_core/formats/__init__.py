"""File formats and the file system, below everything else: class tokens in every host's format, the one atomic
writer, the one weights-only reader, images, plots, folders of reference images and the shipped CLIP vocabulary.
Nothing here knows the method."""
