"""Records every layer shares: jobs and files, events, configuration, identities. They import nothing above them."""
