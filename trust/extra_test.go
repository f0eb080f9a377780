package trust

import (
	"context"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestExtraKeys: the Extra keys (the federated bundles) are published
// beside the bundle, follow their source on BundleChanged, and an edit of
// them is repaired.
func TestExtraKeys(t *testing.T) {
	client := fake.NewClientset(namespace("app"))
	b := &bundle{}
	b.set("ROOT")
	var mu sync.Mutex
	fed := `{}`
	extra := func() map[string]string {
		mu.Lock()
		defer mu.Unlock()
		return map[string]string{"federated-bundles.json": fed, DefaultKey: "ignored"}
	}
	c := startController(t, Config{Client: client, Bundle: b.get, Extra: extra})
	wait := func(want string) {
		t.Helper()
		waitConfigMapData(t, client, "app", map[string]string{DefaultKey: "ROOT", "federated-bundles.json": want})
	}
	wait(`{}`)
	mu.Lock()
	fed = `{"b.test":{"keys":[]}}`
	mu.Unlock()
	c.BundleChanged()
	wait(`{"b.test":{"keys":[]}}`)

	cm, _ := client.CoreV1().ConfigMaps("app").Get(context.Background(), DefaultConfigMapName, metav1.GetOptions{})
	cm.Data["federated-bundles.json"] = "edited"
	if _, err := client.CoreV1().ConfigMaps("app").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait(`{"b.test":{"keys":[]}}`)
}
