"""Third-party-style Pyramid plugins the tests include (as an app cannot edit them)."""
