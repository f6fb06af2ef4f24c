"""The Instruct-LF method, free of Dagster: proposals, vocabulary, linker, compatibility, Linear CorEx, factors."""
