package convert

import "errors"

// kindOf is the kind an error of this package carries, "" for none.
func kindOf(err error) string {
	var ke *KindError
	if errors.As(err, &ke) {
		return ke.Kind
	}
	return ""
}
