"""All SQL lives here: the schema, the Database handle, and verbs that return model records."""
