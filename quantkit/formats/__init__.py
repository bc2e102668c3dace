"""Writers and their inverse readers, one module per on-disk format."""
