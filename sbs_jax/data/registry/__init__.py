"""SeqIO registration: sources, prefixes, example selection and the task variants."""
