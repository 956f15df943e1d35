"""The features job's parts: AST (Kaldi fbank) features, the library scan,
the stratified song split and the class-balance report."""
