"""The toon world, its base networks and the bundled model's recipe."""
