"""The tutorials' pictures as commands on a run: ``actrec inspect`` (filters, feature maps, maximisation, ...)."""
