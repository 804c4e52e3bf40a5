from modeling_clasp.modeling_clasp import ClaspModel, ClaspOutput, ClaspPreTrainedModel, clasp_loss, gather_with_grad

__all__ = ["ClaspModel", "ClaspOutput", "ClaspPreTrainedModel", "clasp_loss", "gather_with_grad"]
