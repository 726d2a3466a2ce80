"""Image data for graft: class folders of images -> TFRecords of tf.Example.

- `make_tfrecords`: validates and converts IMAGES_DIR/<class>/<files> into
  OUT_DIR/span-N/{train,eval}/data-*.tfrecord plus OUT_DIR/labels.txt, the layout the
  pipeline's ImportExampleGen reads (`graft make-tfrecords`).
- `demo_dataset`: the embedded offline data set (scikit-learn's 8x8 digits upscaled to PNGs)
  that `graft run` trains on when no --data is given.
"""
