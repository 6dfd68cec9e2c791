"""The `openbits` command line: bitsadmin's verbs over the client library."""
