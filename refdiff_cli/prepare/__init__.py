"""prepare: cut training chips from datasets and GeoTIFFs into shards."""
