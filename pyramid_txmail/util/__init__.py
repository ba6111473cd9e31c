"""Small helpers every layer may use: text made safe for logs, private directories,
regular-file checks, directory listings.  They import nothing else from the package,
so they sit at the bottom of the data path."""
