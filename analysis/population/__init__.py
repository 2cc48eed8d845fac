"""Population scale: fixed-size sketches of many adapters, a Dask scan into a Parquet index, and queries
(neighbours, families) over the sketches with exact re-ranking of the few candidates that matter."""
