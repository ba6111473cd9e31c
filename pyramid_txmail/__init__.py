"""pyramid_txmail: transactional email for Pyramid."""
